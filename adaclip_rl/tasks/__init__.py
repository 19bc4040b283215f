"""adaclip_rl.tasks"""
