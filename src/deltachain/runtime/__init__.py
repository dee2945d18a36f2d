"""The state transition and the module interface; knows nothing of networking or storage."""
