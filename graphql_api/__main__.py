"""``python -m graphql_api > schema.graphql``: print the GraphQL schema (SDL) kept in the repository."""

import sys

from graphql_api.schema import sdl

sys.stdout.write(sdl())
