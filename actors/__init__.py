"""Ray actors and Serve deployments: the running units of Myriad Cluster."""
