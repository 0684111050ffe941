"""[selection] Query strategies: which items to label next."""
