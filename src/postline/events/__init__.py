"""Events: the outbox turned into signed webhook deliveries."""
