"""Pagination of the REST API list endpoints."""

from rest_framework.pagination import PageNumberPagination


class StandardPagination(PageNumberPagination):
    """Page-number pagination; ``?page_size=`` up to 500 (default ``API_PAGE_SIZE``, 50)."""

    page_size_query_param = "page_size"
    max_page_size = 500
