"""MMEB-v2: task registry, readers for the official release, and the evaluation harness."""
from .registry import TASKS, Task, select

__all__ = ["TASKS", "Task", "select"]
