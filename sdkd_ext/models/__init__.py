"""Models sdkd ships as package data: the demo teacher (its card: demo-teacher.md)."""
