"""adaclip_rl.rollout"""
