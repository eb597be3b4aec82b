"""Starting a server from a profile, below the commands: the launch spec (prepare.py) and one chat
request against a running server (chat.py). `up`, `smoke`, the router's pair and scripts use these."""
