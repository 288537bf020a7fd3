"""The swarm-node daemon: config, identity, composition root, CLI, local API, test mesh."""

__version__ = "0.1.0"
