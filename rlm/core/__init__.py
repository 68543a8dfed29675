"""The RLM itself (``rlm.core.rlm``), its result types (``rlm.core.types``) and the direct-use LM
handler (``rlm.core.lm_handler``), under the module paths of the reference ``rlms`` package."""

from rlm.core.rlm import RLM

__all__ = ["RLM"]
