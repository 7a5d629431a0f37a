"""The chat app as the snapshot tests see it: the bundled model, -c 256, greedy, no cursor blink."""

from edgellm.sampling import SamplingParams
from edgellm.tui.app import ChatApp

app = ChatApp(None, ctx=256, params=SamplingParams(temperature=0.0), max_tokens=4, cursor_blink=False)
