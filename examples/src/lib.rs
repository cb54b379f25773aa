//! Examples: a counter and an order aggregate, tested with TestStore
