"""What relies on a library's internals, each with a contract test; those libraries are pinned
to the versions tested (pyproject.toml)."""
