"""Cluster membership of bridge replicas: who is up and what each one runs (membership.py).
Gossip proposes; the config stream and the database locks decide."""

from bridge.cluster.membership import Member, Membership, MembershipConfig, Status

__all__ = ["Member", "Membership", "MembershipConfig", "Status"]
