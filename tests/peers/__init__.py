"""Real RADIUS peers for the tests: child processes on loopback, stopped by pid."""
