"""Kubernetes' (and Prefect's) syntax rules for the values a pool passes through.

Each rule is a regular expression that both the API server (a CRD `pattern`, or a
CEL `matches()`) and pydantic (`raypool render`, the operator) evaluate, so a value
refused at `kubectl apply` is refused offline too. The expressions use only what
RE2 (Go) and Rust's regex (pydantic) both understand. Where Kubernetes would
refuse a generated object, the rule is Kubernetes' own: the pool is refused when
it is applied, not when the operator's RayCluster or Deployment is.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

INT32_MAX = 2**31 - 1

#: k8s.io/apimachinery/pkg/api/resource: the regular expression of a Quantity.
QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
#: RFC 1035 label (names that become Services): lowercase, starting with a letter.
DNS_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
#: RFC 1123 subdomain (Secrets, ConfigMaps, ServiceAccounts), at most 253 characters.
DNS_SUBDOMAIN = f"^{_SUBDOMAIN}$"
#: A label or annotation key: an optional DNS-subdomain prefix and '/', then a name of
#: at most 63 characters.
QUALIFIED_NAME = rf"^({_SUBDOMAIN}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?$"
PREFIX_MAX = 253
QUALIFIED_NAME_MAX = PREFIX_MAX + 1 + 63
#: A label value: empty, or at most 63 characters.
LABEL_VALUE = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
#: A key of a Secret or ConfigMap.
CONFIG_KEY = r"^[-._a-zA-Z0-9]+$"
#: A `ray start` flag without its dashes (KubeRay writes `--KEY=VALUE` into a shell line).
RAY_START_PARAM = r"^[a-z0-9]([-_a-z0-9]*[a-z0-9])?$"
#: One line: no control characters (a newline would end a shell command line).
ONE_LINE = r"^[^\x00-\x1f\x7f]*$"
#: A Prefect work pool or queue name: Prefect's banned characters (/ % & > <), and '#',
#: '?' and whitespace, which break the API URL or the worker's command line.
PREFECT_NAME = r"^[^/%&<>#?\s\\]+$"
#: An image reference (distribution/reference): [host[:port]/]path[:tag][@digest].
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
IMAGE = (
    rf"^(?:{_DOMAIN}/)?{_PATH}(?:/{_PATH})*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
#: An image repository ([host[:port]/]path, no tag or digest), or a registry path
#: ending in '/' (every repository under it): spec.jobVariables.imageRepositories.
IMAGE_REPOSITORY = rf"^(?:(?:{_DOMAIN}/)?{_PATH}(?:/{_PATH})*/?|{_DOMAIN}/)$"
#: No whitespace (CEL's isURL() takes a space in the path).
URL_SHAPE = r"^https?://\S+$"
#: An http(s) URL with a host and, if any, a port in 1-65535 (CEL's url library).
URL_RULE = (
    "isURL(self) && url(self).getScheme() in ['http', 'https'] && "
    "url(self).getHostname() != '' && (url(self).getPort() == '' || "
    "(int(url(self).getPort()) >= 1 && int(url(self).getPort()) <= 65535))"
)
URL_MESSAGE = (
    "must be an http(s) URL with a host and a port in 1-65535, "
    "such as http://prefect-server.prefect.svc:4200/api"
)


def matches(pattern: str, value: str) -> bool:
    return re.search(pattern, value) is not None


def url_problem(value: str) -> str | None:
    """The twin of URL_RULE."""
    if not matches(URL_SHAPE, value):
        return URL_MESSAGE
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError out of 0-65535 or not a number
    except ValueError:
        return URL_MESSAGE
    if not parts.hostname or port == 0:
        return URL_MESSAGE
    return None
