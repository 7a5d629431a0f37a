"""The chat interface: the Textual app (app.py), the plain REPL (plain.py) and the /commands both share."""
