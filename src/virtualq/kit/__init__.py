"""Framework plumbing shared by every feature."""
