"""Projects inside an organization (a tenant): ``/v1/organization/projects``, the SDK's admin client."""
