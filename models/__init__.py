"""One module per architecture; ARCHITECTURES maps `general.architecture` to its model class."""

from edgellm.models.gemma3 import Gemma3
from edgellm.models.llama import Llama
from edgellm.models.qwen2 import Qwen2
from edgellm.models.qwen3 import Qwen3

ARCHITECTURES = {"llama": Llama, "qwen2": Qwen2, "qwen3": Qwen3, "gemma3": Gemma3}
