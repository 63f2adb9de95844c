from conduit.backends.base import Backend, Delta, GenerateRequest, Sampling, TokenLogprob

__all__ = ["Backend", "Delta", "GenerateRequest", "Sampling", "TokenLogprob"]
