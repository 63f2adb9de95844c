from conduit.pipeline.context import RequestContext

__all__ = ["RequestContext"]
