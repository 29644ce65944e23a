"""The Ray Serve deployments: thin classes around the engines, and the ingress that composes the
data plane over deployment handles."""
