"""The one name that moved inside transformers 5: the KV cache argument.

transformers 5.24 renamed ``past_key_values`` to ``cache`` in model forwards, ``generate()``'s model
kwargs and model outputs (the old name warns until 5.40). The project supports both sides of the rename
through this one constant.
"""

from __future__ import annotations

import dataclasses

from transformers.modeling_outputs import CausalLMOutputWithPast

CACHE_ARG = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"
