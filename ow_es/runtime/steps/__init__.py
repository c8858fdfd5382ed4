"""The step kinds: each records and replays one kind of step through the executor's
narrow interface."""
