"""[labelling] Label Studio: the client, the connection, the embedded server, the labeller."""
