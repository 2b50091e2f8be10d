"""The torch side: masked layers, per-task statistics, networks by name, fixed weights."""
