from conduit.pipeline.context import RequestContext
from conduit.pipeline.pipeline import Pipeline

__all__ = ["Pipeline", "RequestContext"]
