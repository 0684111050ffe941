"""[reporting] The history as a table, exports, plots and the HTML report."""
