"""Device capture: the frames worth learning from go to the host; the drift signal goes in the
status (docs/agent.md "Capture", docs/protocol.md "Captures" and "Drift")."""
