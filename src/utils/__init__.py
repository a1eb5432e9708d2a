"""Utilities: resolvers, instantiators, the run wrapper."""
