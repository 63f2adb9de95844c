from conduit.backends.base import Backend, Delta, GenerateRequest, Sampling

__all__ = ["Backend", "Delta", "GenerateRequest", "Sampling"]
