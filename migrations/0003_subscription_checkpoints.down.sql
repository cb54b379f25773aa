DROP TABLE subscription_checkpoints;
