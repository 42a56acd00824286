from tests.mirror.support import *  # noqa: F403 (shared fixtures)
