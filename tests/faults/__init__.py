"""The fault suite: real faults (a paused or stopped PostgreSQL, a silent server, killed workers), no mocks."""
