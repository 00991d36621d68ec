"""Service layer: the rules of requests and the model registry, independent of HTTP."""
