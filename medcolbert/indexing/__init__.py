"""The compressed multi-vector index: k-means centroids, residual codec, storage, builder."""
