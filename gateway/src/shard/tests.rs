// shard tests
