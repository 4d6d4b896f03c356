"""The house: no import loops in vitclip/ and configs/, the library never imports configs/, evaluators sit side by
side, and nothing but the converter and its tests imports torch. Imports inside functions count too.

`python tests/test_imports.py` prints the graph (the README's design section shows it).
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('vitclip', 'configs')


def module_files():
  """{'vitclip.data.shapes': path, ...} for every module of the packages."""
  out = {}
  for package in PACKAGES:
    for directory, _, files in os.walk(os.path.join(ROOT, package)):
      for name in files:
        if name.endswith('.py'):
          path = os.path.join(directory, name)
          parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
          if parts[-1] == '__init__':
            parts = parts[:-1]
          out['.'.join(parts)] = path
  return out


def import_graph() -> dict[str, set[str]]:
  """module -> the project modules it imports (anywhere in the file). `from a import b` names a.b when that is a
  module, else a."""
  modules = module_files()
  graph = {}
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    targets = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = [f'{node.module}.{alias.name}' if f'{node.module}.{alias.name}' in modules else node.module
                 for alias in node.names]
      else:
        continue
      for name in names:
        while name and name not in modules:  # 'vitclip.data.shapes.X' -> the module that defines it.
          name = name.rpartition('.')[0]
        if name and name != module and not module.startswith(name + '.') and name not in PACKAGES:
          targets.add(name)
    graph[module] = targets
  return graph


def find_cycle(graph):
  """A list of modules forming an import cycle, or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 'open':
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = 'done'
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_no_import_cycles():
  assert find_cycle(import_graph()) is None


def test_the_library_never_imports_configs():
  bad = {m: sorted(t for t in ts if t.startswith('configs')) for m, ts in import_graph().items()
         if m.startswith('vitclip')}
  assert not {m: t for m, t in bad.items() if t}


def test_evaluators_stand_side_by_side():
  graph = import_graph()
  from vitclip.evaluators import EVALUATORS
  evaluators = {cls.__module__ for cls in EVALUATORS.values()}
  assert 'vitclip.evaluators.linear_probe' in evaluators
  for module in evaluators:
    assert not graph[module] & set(evaluators), module


def test_cycle_finder_finds_a_cycle():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b'}, 'b': set()}) is None


if __name__ == '__main__':
  for module, targets in sorted(import_graph().items()):
    print(f'{module:32s} -> {", ".join(sorted(targets)) or "-"}')
