"""Admin operations behind /admin/v1/: revocations, approvals and reading the audit trail.

Called by the core like any read (same authentication, same audit record) and authorised by the same policy
on admin objects (`admin:revocations` write, `admin:audit` read, `admin:approvals` read and write): the
pipeline checks the permission each operation declares (core.operations) before its handler runs.
"""
