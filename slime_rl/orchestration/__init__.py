"""Everything that knows Ray: cluster start/join, actor shells, placement, the driver and its loops."""
