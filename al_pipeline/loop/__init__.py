"""[loop] Rounds: start, wait, finish; driven by the CLI, the webhook server and simulations."""
