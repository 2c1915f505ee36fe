"""Reward functions: built-in rules, custom `module:function` rewards and remote HTTP rewards."""
