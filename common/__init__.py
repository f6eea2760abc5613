"""Protocol cores, OS adapters and the data plane shared by client and concentrator."""
