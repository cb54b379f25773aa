DROP FUNCTION append_expectation_failed(text, text, bigint);
