"""The policy files: loading, decisions (Casbin), the catalog, row filters, budget limits. No store.

snapshot.py holds a loaded Policy, loader.py reads the directory into one, lint.py says what is wrong with it;
catalog.py (datasets.toml), decisions.py (who may do what), rowfilters.py (which rows) and limits.py
(budgets.toml) are its parts; explain.py says why an agent may read a dataset or not. Import from here:
``from gateway.policy import Policy, load_policy``.
"""

from gateway.policy.catalog import APPROVALS, DATASET_KEYS, NAME_PATTERN, Catalog, Dataset, load_catalog
from gateway.policy.decisions import CasbinEngine, Decision, Engine, IndexedEngine, Rule, build_enforcer
from gateway.policy.explain import Explanation, UnknownDataset, explain_read
from gateway.policy.limits import NO_BUDGETS, Budgets, Limits, load_budgets
from gateway.policy.lint import approval_conflicts, failing_cases, lint
from gateway.policy.loader import POLICY_FILES, SHIPPED_MODEL, load_policy, role_names
from gateway.policy.rowfilters import Claim, FilterSyntaxError, RowFilter, Scope, Term
from gateway.policy.snapshot import CaseResult, Policy, PolicyCase, PolicyHolder

__all__ = [
    "APPROVALS",
    "DATASET_KEYS",
    "NAME_PATTERN",
    "NO_BUDGETS",
    "POLICY_FILES",
    "SHIPPED_MODEL",
    "Budgets",
    "CasbinEngine",
    "CaseResult",
    "Catalog",
    "Claim",
    "Dataset",
    "Decision",
    "Engine",
    "Explanation",
    "FilterSyntaxError",
    "IndexedEngine",
    "Limits",
    "Policy",
    "PolicyCase",
    "PolicyHolder",
    "RowFilter",
    "Rule",
    "Scope",
    "Term",
    "UnknownDataset",
    "approval_conflicts",
    "build_enforcer",
    "explain_read",
    "failing_cases",
    "lint",
    "load_budgets",
    "load_catalog",
    "load_policy",
    "role_names",
]
