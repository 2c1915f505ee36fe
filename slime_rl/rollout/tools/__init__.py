"""Tools a policy calls during multi-turn rollouts: the interface, the sandbox, built-ins and the call format."""
