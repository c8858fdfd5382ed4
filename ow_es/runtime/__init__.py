"""The runtime: replaying a claimed run (executor, context, step kinds, history, unwinding),
the group committer and the worker that claims and drives runs."""
