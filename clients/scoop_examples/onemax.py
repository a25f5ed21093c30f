"""DEAP's OneMax with the evaluations spread by futures.map, as SCOOP users write it.

Run: python -m pyro_compute -n 2 clients/scoop_examples/onemax.py [--serial]
Prints the best fitness found; the run is seeded, so it equals the serial run's.
"""
import random
import sys

from deap import algorithms, base, creator, tools

from pyro_compute import futures

creator.create("FitnessMax", base.Fitness, weights=(1.0,))
creator.create("Individual", list, fitness=creator.FitnessMax)


def evalOneMax(individual):
    return (sum(individual),)


toolbox = base.Toolbox()
toolbox.register("attr_bool", random.randint, 0, 1)
toolbox.register("individual", tools.initRepeat, creator.Individual, toolbox.attr_bool, 100)
toolbox.register("population", tools.initRepeat, list, toolbox.individual)
toolbox.register("evaluate", evalOneMax)
toolbox.register("mate", tools.cxTwoPoint)
toolbox.register("mutate", tools.mutFlipBit, indpb=0.05)
toolbox.register("select", tools.selTournament, tournsize=3)
if "--serial" not in sys.argv:
    toolbox.register("map", futures.map)


def main():
    random.seed(64)
    pop = toolbox.population(n=100)
    hof = tools.HallOfFame(1)
    algorithms.eaSimple(pop, toolbox, cxpb=0.5, mutpb=0.2, ngen=15, halloffame=hof, verbose=False)
    print("onemax", hof[0].fitness.values[0], sum(hof[0]))


if __name__ == "__main__":
    main()
