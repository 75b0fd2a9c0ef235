"""The domain: records that cross boundaries, the error tree, validation rules and settings."""
