"""Helpers under the reference ``rlms`` module paths: ``rlm.utils.exceptions``, ``.parsing``,
``.prompts``, ``.token_utils`` and ``.rlm_utils``."""
