"""``avx fuse``: train and evaluate fusion methods from a feature store."""
