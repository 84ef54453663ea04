"""Helpers for Celery clients of Celeriac workers.

`enable_rpc_chords(app)`: Celery's client refuses chords on the `rpc://` result backend
(NotImplementedError), because Celery's workers have nowhere to count a chord's header.
Celeriac workers count in RabbitMQ instead; this lets the client send them. The chord's
size travels with its body (`chord_size`), which is how Celeriac knows when it is
complete. Only use it when Celeriac workers consume the chord's queues.
"""

__all__ = ["enable_rpc_chords"]


def enable_rpc_chords(app):
    """Let `app` send chords (and chains with a group followed by a task) on rpc://."""
    backend = app.backend

    def ensure_chords_allowed():
        pass

    def apply_chord(header_result_args, body, **kwargs):
        # The header tasks embed this very body signature: the size goes out with them.
        body.options["chord_size"] = len(header_result_args[1])

    backend.ensure_chords_allowed = ensure_chords_allowed
    backend.apply_chord = apply_chord
    return app
